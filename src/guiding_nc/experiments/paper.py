"""The paper's own headline numbers, quoted (Markou, Ajanthan, Gould, NeurIPS 2024).

These are *not* results of this package: the book prints them beside what this package
measures so the two can be compared.  Values are medians over 5 seeds as printed in the paper.

* ``TABLE1`` / ``TABLE2``: train / test top-1 (%) at epochs 50 and 200,
  ``TABLE[experiment][method] = (epoch 50, epoch 200)``;
* ``TABLE3``: training GPU memory (GB), ``TABLE3[experiment][variant]`` (``None`` = not run).
"""
from __future__ import annotations

from ..core.methods import PAPER_METHODS as METHODS  # the three the paper compares


def _rows(text: str):
    out = {}
    for line in text.strip().splitlines():
        name, cells = line.split(":")
        vals = [tuple(float(v) for v in cell.split("/")) for cell in cells.split("|")]
        out[name.strip()] = dict(zip(METHODS, vals))
    return out


TABLE1 = _rows("""
CIFAR10 ResNet18: 87.42 / 96.69 | 86.89 / 97.18 | 88.71 / 98.09
CIFAR10 VGG13: 93.59 / 99.15 | 76.66 / 79.36 | 95.69 / 99.56
CIFAR100 ResNet50: 58.47 / 95.87 | 63.93 / 91.34 | 72.15 / 96.96
CIFAR100 VGG13: 82.00 / 99.34 | 81.14 / 94.55 | 88.39 / 98.92
STL10 ResNet50: 83.86 / 99.42 | 86.76 / 98.38 | 93.54 / 99.72
STL10 VGG13: 82.66 / 100.0 | 83.60 / 99.92 | 90.14 / 100.0
ImageNet ResNet50: 58.35 / 77.20 | 70.44 / 83.09 | 74.09 / 88.01
""")

TABLE2 = _rows("""
CIFAR10 ResNet18: 80.47 / 83.97 | 80.63 / 84.53 | 81.76 / 84.78
CIFAR10 VGG13: 86.70 / 90.34 | 70.99 / 72.48 | 88.30 / 90.98
CIFAR100 ResNet50: 45.91 / 51.29 | 45.37 / 48.03 | 48.38 / 50.52
CIFAR100 VGG13: 60.82 / 67.54 | 60.10 / 62.78 | 62.39 / 67.14
STL10 ResNet50: 55.41 / 63.60 | 58.11 / 64.33 | 57.56 / 62.75
STL10 VGG13: 66.09 / 81.61 | 66.15 / 79.53 | 68.78 / 79.94
ImageNet ResNet50: 52.64 / 60.02 | 58.85 / 61.47 | 63.40 / 65.36
""")

TABLE3_VARIANTS = ("standard", "fixed", "implicit, DDN off", "implicit, DDN on")
TABLE3 = {
    "UFM-10": (1.5, 1.5, 1.5, 1.6),
    "UFM-100": (1.7, 1.7, 1.7, 10.7),
    "UFM-200": (1.7, 1.7, 1.8, 70.3),
    "UFM-1000": (1.9, 1.9, 2.9, None),
    "ResNet50-CIFAR100": (2.6, 2.6, 2.7, 18.9),
    "ResNet50-ImageNet": (27.5, 27.2, 27.8, None),
}
TABLE3 = {k: dict(zip(TABLE3_VARIANTS, v)) for k, v in TABLE3.items()}

#: The config of this package that trains the setting of each row of Tables 1-2.
PAPER_ROW_OF_CONFIG = {
    "cifar10_resnet18": "CIFAR10 ResNet18",
    "cifar10_vgg13": "CIFAR10 VGG13",
    "cifar100_resnet50": "CIFAR100 ResNet50",
    "cifar100_vgg13": "CIFAR100 VGG13",
    "stl10_resnet50": "STL10 ResNet50",
    "stl10_vgg13": "STL10 VGG13",
    "imagenet_resnet50": "ImageNet ResNet50",
}
