"""Each component's recipe section, one module per component (torchtune's shape): `toolkit.recipe` composes
them into a Recipe and loads YAML. These modules import nothing above pydantic and `toolkit.errors`, so
validating a recipe never imports torch or transformers."""
