"""Reports: the JSON document is the contract; tables and plots are views of it."""
