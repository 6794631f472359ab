"""Each component's recipe section, one module per component (torchtune's shape), which `toolkit.recipe`
composes into a Recipe; `loading` reads the YAML (extends, --set, file:line of every key) and `checks` the
files a recipe names. These modules import only pydantic, yaml, jinja2 and the bottom floor (toolkit.errors,
toolkit.util), so validating a recipe never imports torch or transformers."""
