"""ImageNet ViT workload (AlgoPerf `imagenet_vit`)."""
