"""The package's own recipes, one module each; they are registered under the `distill.recipes` entry
points (see distill.context for the contract). No recipe imports another: shared stages live in the
method subpackages."""
