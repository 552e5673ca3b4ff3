"""`scalinglab corpus ...`: prepare corpora and describe them."""
