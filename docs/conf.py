"""Sphinx configuration of eexit's API reference: ``make docs`` writes HTML to docs/_build/html."""
import importlib

from sphinx.util.nodes import make_refnode

import eexit

project = "eexit"
author = "eexit developers"
copyright = "eexit developers"
release = version = eexit.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
exclude_patterns = ["_build"]
html_theme = "alabaster"

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # not torch.nn.Module's docstrings under every undocumented forward
napoleon_numpy_docstring = False

# The build runs offline (no intersphinx inventories), so references to other projects' objects in
# signatures (torch.Tensor, os.PathLike, ...) cannot resolve; nitpicky mode checks every reference
# to eexit itself.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"torch(\..*)?|collections\.OrderedDict|os\.PathLike")]
nitpick_ignore = [("py:class", "eexit.timing.K")]  # a TypeVar in signatures, not a documented object

def _python_object(dotted):
    """The object a dotted name denotes (longest importable module, then attributes), or None."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return getattr(obj, "__func__", obj)  # a class's methods: the function, not a new bound method
    return None


def _resolve_as_defined(app, env, node, contnode):
    """A reference in a docstring resolves as in the module that defines the documented object, and
    to the object itself wherever it is documented: the pages document objects under the names users
    import (``eexit.nn.attach_exits``), while docstrings name others relative to their own module
    (``set_backend`` in eexit/nn/execution.py) or by their defining module (``eexit.nn.heads.X``)."""
    _, found, owner = (node.source or "").partition(":docstring of ")
    if node.get("refdomain") != "py" or not found:
        return None
    domain = env.get_domain("py")
    if not hasattr(app, "_eexit_documented"):  # id(python object) -> (docname, node id)
        entries = [(n, (e.docname, e.node_id)) for n, e in domain.objects.items() if not e.aliased]
        entries += [(n, (e.docname, e.node_id)) for n, e in domain.modules.items()]
        app._eexit_documented = {id(_python_object(n)): where for n, where in entries}
    target = node["reftarget"].lstrip("~.")
    scopes = owner.split(".")
    for i in range(len(scopes), -1, -1):
        obj = _python_object(".".join(scopes[:i] + [target]))
        if obj is not None and not isinstance(obj, (int, float, str, bytes, bool, tuple)):
            where = app._eexit_documented.get(id(obj))
            if where:
                return make_refnode(app.builder, node["refdoc"], where[0], where[1], contnode)
    return None


def setup(app):
    app.connect("missing-reference", _resolve_as_defined)
