"""Input and output: collection layout, atomic files, BigFiles, video decoding, preprocessing."""
