"""A griffe extension: the docstrings' cross-reference roles become links on the site.

The project's docstrings are written in one style, the one Python's own documentation and
``help()`` read well: reStructuredText roles for cross-references (``:func:`build_draft_tree```,
``:class:`~eagle3_ref.tree.DraftTree```), double backticks for code, pipe tables. mkdocstrings
renders Markdown, where a role shows as literal text; this extension rewrites each role into an
optional autorefs link once the package is loaded, resolving a short name from the object that
holds the docstring outward (its class, its module, then the package). The link appears where
the site renders the target; a target it does not render, or a name that does not resolve (a
test helper, another library), shows as code.
"""

from __future__ import annotations

import re

from griffe import Extension, Module, Object

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([.\w]+)(?:\(\))?`")


def _lookup(root: Module, path: str) -> Object | None:
    parts = path.split(".")
    if parts[0] != root.name:
        return None
    obj = root
    for part in parts[1:]:
        try:
            obj = obj.members[part]
        except (KeyError, AttributeError):
            return None
    return obj


def _resolve(root: Module, holder: Object, name: str) -> str | None:
    """The full path of ``name`` as seen from ``holder``'s docstring, or None."""
    if name.startswith("."):  # relative to the holder's package
        package = holder.module.path.rsplit(".", 1)[0] if not holder.module.is_package else holder.module.path
        name = package + name
    scope = holder
    while scope is not None:  # the holder, its class, its module, its packages
        if _lookup(root, f"{scope.path}.{name}") is not None:
            return f"{scope.path}.{name}"
        scope = scope.parent
    return name if _lookup(root, name) is not None else None


class RolesToLinks(Extension):
    def on_package(self, *, pkg: Module, **kwargs) -> None:
        def visit(obj: Object) -> None:
            if obj.docstring is not None:
                def link(match: re.Match) -> str:
                    short, name = match.group(1), match.group(2)
                    label = name.rsplit(".", 1)[-1] if short else name.lstrip(".")
                    target = _resolve(pkg, obj, name)
                    # optional: a link where the site renders the target, plain code where it does not
                    # (a constant without a docstring, a module the API page leaves out)
                    return f'<autoref identifier="{target}" optional><code>{label}</code></autoref>' \
                        if target else f"`{label}`"

                obj.docstring.value = ROLE.sub(link, obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)
