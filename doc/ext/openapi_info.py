"""``.. openapi-info:: PATH``: an OpenAPI document's own introduction.

sphinxcontrib-openapi renders the paths of a document, not its
``info.description``, where storage_engine/service/openapi.yaml states the
rules every request follows (the token, the error shape, idempotent
creates, incarnations). This renders that description, CommonMark as
OpenAPI has it, converted the way sphinxcontrib-openapi converts the
descriptions of paths.
"""

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles
import sphinx_mdinclude
import yaml


class OpenAPIInfo(SphinxDirective):
    required_arguments = 1

    def run(self):
        rel, path = self.env.relfn2path(directives.path(self.arguments[0]))
        self.env.note_dependency(rel)
        with open(path, encoding='utf-8') as f:
            info = yaml.safe_load(f).get('info', {})
        text = sphinx_mdinclude.convert(info.get('description', ''))
        container = nodes.container()
        nested_parse_with_titles(
            self.state, StringList(text.splitlines(), source=path),
            container)
        return container.children


def setup(app):
    app.add_directive('openapi-info', OpenAPIInfo)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
