"""transformers' own model tests (its ``ModelTesterMixin``) run on vtc-compressed models: see README.md."""
