# Sphinx configuration of the storage-engine documentation.
#
#   tox -e docs      (sphinx-build -W --keep-going -b html doc/source
#                     doc/build/html)

import warnings

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
]

root_doc = 'index'

html_theme = 'openstackdocs'
# The project's name comes from setup.cfg; the theme's links to a
# repository and a bug tracker stay off until the project has public ones.
openstackdocs_repo_name = ''
openstackdocs_bug_project = ''
