"""The metrics of a run, and the tables and plots made from them."""
