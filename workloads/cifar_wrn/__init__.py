"""CIFAR-10 Wide ResNet workload."""
