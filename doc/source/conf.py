# Sphinx configuration of the storage-engine documentation.
#
#   tox -e docs      (sphinx-build -W --keep-going -b html doc/source
#                     doc/build/html)

project = 'storage-engine'
copyright = 'The storage-engine developers'

extensions = [
    'openstackdocstheme',
]

root_doc = 'index'

html_theme = 'openstackdocs'
# The project's name comes from setup.cfg; the theme's links to a
# repository and a bug tracker stay off until the project has public ones.
openstackdocs_repo_name = ''
openstackdocs_bug_project = ''
