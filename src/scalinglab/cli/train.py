"""`scalinglab train`, `scalinglab runs`, `scalinglab export`."""
