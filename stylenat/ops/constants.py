"""Constants shared across layers: below models/, data/ and metrics/, so each takes them from here."""

# ImageNet's per-channel RGB mean and standard deviation (of [0, 1] pixels): the "imagenet" normalisation
# the reference code trained in (data/transforms.py), the generator's output space (models/generator.py)
# and VGG16's input statistics (metrics/vgg16.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
