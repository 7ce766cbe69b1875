"""Pure folds from events to read models, and the runner that materialises them."""
