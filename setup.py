from setuptools import find_packages, setup

setup(
    name="lossmix",
    version="0.1.0",
    description="LossMix (supervision interpolation) for object detection and domain adaptation, on torchvision Faster R-CNN",
    packages=find_packages(include=["lossmix", "lossmix.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.29,<0.30",  # modeling/rpn.py and roi_heads.py override methods read from 0.29
        "opencv-contrib-python-headless>=4.8",
        "pycocotools>=2.0.6",
        "fvcore>=0.1.5",
        "defusedxml>=0.7",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "numpy>=1.24",
        "tensorboard>=2.14",  # event files for `tensorboard --logdir OUTPUT_DIR`
    ],
    extras_require={
        "analysis": ["captum>=0.7"],
        "test": ["pytest>=7", "hypothesis>=6"],
    },
)
