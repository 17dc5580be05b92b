"""Two small fixes to the rendered pages, so that they load without console errors.

- sphinx-thebe 0.3.1 registers its inline configuration script twice under
  Sphinx 7.4; the second copy re-declares ``const THEBE_JS_URL`` and throws a
  SyntaxError in every page. Inline scripts with the same body are kept once.
- The theme's light/dark switch starts from an empty mode unless one is set
  (``html_context["default_mode"]`` in ``_config.yml``).
"""


def _drop_repeated_inline_scripts(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        body = getattr(script, "attributes", {}).get("body")
        if body:
            if body in seen:
                continue
            seen.add(body)
        kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _drop_repeated_inline_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
