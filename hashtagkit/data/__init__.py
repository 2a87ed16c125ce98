"""Dataset readers (HARRISON, raw posts, the synthetic demo), hashtag normalisation,
vocabulary and splits. Everything here ends in the same shape: image paths, a tag list per
image and a vocabulary, which `prepare` turns into a store."""
