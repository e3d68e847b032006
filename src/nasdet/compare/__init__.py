"""`nasdet compare`: train several architectures with one budget and K seeds, and compare them."""
