"""Registry of feature extractors (vgg16-object, vgg16-scene, ...): the extract issue fills it."""
