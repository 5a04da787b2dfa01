"""Explanations of trained models: integrated gradients and saliency for image classifiers,
per-token integrated gradients for text classifiers, attention maps for Transformers.

  python -m jaxmodels.explain --workdir=DIR --num_examples=8   # writes DIR/explain/*.png

`attributions` holds the maths (pure functions), `figures` the drawing, `explainer` what is
explained for each kind of model. Importing this package imports none of them.
"""
