# Sphinx configuration of the storage-engine documentation.
#
#   tox -e docs      (sphinx-build -W --keep-going -b html doc/source
#                     doc/build/html; tests/functional/test_docs.py runs
#                     the same build into a temporary directory)

import os
import sys
import warnings

# doc/ext: this project's own Sphinx extensions.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..', 'ext'))

# The configuration reference imports the Cinder drivers, hence cinder,
# which warns on import that eventlet is deprecated. It is Cinder's
# business, not a problem of these pages: keep it out of the build's
# output.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')

project = 'storage-engine'
copyright = 'The storage-engine developers'

extensions = [
    'openstackdocstheme',
    # .. show-options:: for the namespaces of setup.cfg's oslo.config.opts
    # entry points (doc/source/configuration/).
    'oslo_config.sphinxext',
    # .. openapi:: for storage_engine/service/openapi.yaml (api.rst).
    'sphinxcontrib.openapi',
    # .. openapi-info:: its introduction, which sphinxcontrib-openapi
    # leaves out (doc/ext/openapi_info.py).
    'openapi_info',
]

# sphinxcontrib-openapi's current renderer (request and response bodies
# as field lists, examples generated from the schemas). It is named here
# rather than with the ``.. openapi:httpdomain::`` directive: Sphinx 9
# reads ``openapi:`` there as a domain that does not exist, and warns.
openapi_default_renderer = 'httpdomain'

root_doc = 'index'

html_theme = 'openstackdocs'
# The project's name comes from setup.cfg; the theme's links to a
# repository and a bug tracker stay off until the project has public ones.
openstackdocs_repo_name = ''
openstackdocs_bug_project = ''
