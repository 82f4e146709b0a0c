"""The paper's own headline numbers, quoted (Markou, Ajanthan, Gould, NeurIPS 2024).

These are *not* results of this package: the book prints them beside what this package
measures so the two can be compared.  Values are medians over 5 seeds as printed in the paper.

* ``TABLE1`` / ``TABLE2``: train / test top-1 (%) at epochs 50 and 200,
  ``TABLE[experiment][method] = (epoch 50, epoch 200)``; ``TABLE1_RANGE`` / ``TABLE2_RANGE`` the
  seed ranges printed beside them, ``((min, max) at 50, (min, max) at 200)``;
* ``TABLE3``: training GPU memory (GB), ``TABLE3[experiment][variant]`` (``None`` = not run).
"""
from __future__ import annotations

from ..core.methods import PAPER_METHODS


def _rows(text: str):
    out = {}
    for line in text.strip().splitlines():
        name, cells = line.split(":")
        vals = [tuple(float(v) for v in cell.split("/")) for cell in cells.split("|")]
        out[name.strip()] = dict(zip(PAPER_METHODS, vals))
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


def _ranges(text: str):
    """``min-max`` per cell, as printed beside each median (``lo-hi lo-hi`` = epoch 50, epoch 200)."""
    out = {}
    for line in text.strip().splitlines():
        name, cells = line.split(":")
        vals = []
        for cell in cells.split("|"):
            e50, e200 = cell.split()
            vals.append(tuple(tuple(float(x) for x in e.split("-")) for e in (e50, e200)))
        out[name.strip()] = dict(zip(PAPER_METHODS, vals))
    return out


# The seed ranges printed beside the medians, (min, max) at epoch 50 and at epoch 200, quoted as
# printed (a few medians lie outside their printed range: medians_outside_their_range lists them).
TABLE1_RANGE = _ranges("""
CIFAR10 ResNet18: 86.1-89.7 96.5-98.6 | 84.7-88.6 95.6-97.9 | 88.5-89.6 97.9-98.6
CIFAR10 VGG13: 90.7-97.0 97.9-99.8 | 53.9-85.8 59.6-99.1 | 95.2-96.2 99.4-99.7
CIFAR100 ResNet50: 53.9-59.6 94.7-98.6 | 61.1-65.2 90.4-92.1 | 70.1-74.1 96.2-97.3
CIFAR100 VGG13: 80.5-84.0 99.2-99.6 | 76.0-81.9 92.5-95.3 | 86.9-89.4 98.8-99.0
STL10 ResNet50: 84.5-90.7 99.0-99.9 | 77.8-86.8 98.1-99.3 | 91.3-95.3 98.0-99.9
STL10 VGG13: 73.7-90.7 100.0-100.0 | 65.6-85.1 99.8-99.9 | 69.2-93.5 100.0-100.0
ImageNet ResNet50: 58.0-59.1 76.5-77.3 | 69.5-70.7 83.1-83.6 | 73.8-74.5 87.5-88.5
""")

TABLE2_RANGE = _ranges("""
CIFAR10 ResNet18: 79.4-82.6 83.2-84.8 | 79.4-81.8 83.7-84.9 | 81.4-82.0 84.3-85.1
CIFAR10 VGG13: 83.7-89.4 89.1-91.5 | 50.7-80.7 56.9-90.5 | 87.4-88.7 90.6-91.5
CIFAR100 ResNet50: 42.1-46.3 50.4-51.9 | 43.2-45.6 47.7-49.3 | 48.0-49.3 50.2-51.2
CIFAR100 VGG13: 59.3-61.2 66.4-68.1 | 57.1-61.1 61.6-63.4 | 61.8-63.6 66.8-67.6
STL10 ResNet50: 54.8-58.3 61.8-65.2 | 57.1-60.0 63.9-66.5 | 56.4-59.2 60.7-63.0
STL10 VGG13: 60.0-72.3 81.3-81.9 | 52.2-67.7 78.6-80.3 | 56.2-71.3 79.5-80.9
ImageNet ResNet50: 52.3-53.3 59.8-60.7 | 58.3-59.1 61.4-62.0 | 63.2-63.8 65.0-65.7
""")


def medians_outside_their_range():
    """The printed cells whose median lies outside its own printed range: ``(table, row, method,
    epoch, median, (min, max))``."""
    out = []
    for name, med, rng in (("Table 1", TABLE1, TABLE1_RANGE), ("Table 2", TABLE2, TABLE2_RANGE)):
        for row, cells in med.items():
            for m, values in cells.items():
                for i, epoch in enumerate((50, 200)):
                    lo, hi = rng[row][m][i]
                    if not lo <= values[i] <= hi:
                        out.append((name, row, m, epoch, values[i], (lo, hi)))
    return out


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
