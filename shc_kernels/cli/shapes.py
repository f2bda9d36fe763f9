"""The conv layer sizes `shc bench` and `shc check` share: name, in channels, out channels,
plane size, stride (3x3, padding 1)."""

SHAPES = {
    "resnet18": [
        ("r18.l1", 64, 64, 56, 1),
        ("r18.l2.s2", 64, 128, 56, 2),
        ("r18.l2", 128, 128, 28, 1),
        ("r18.l3.s2", 128, 256, 28, 2),
        ("r18.l3", 256, 256, 14, 1),
        ("r18.l4.s2", 256, 512, 14, 2),
        ("r18.l4", 512, 512, 7, 1),
    ],
    "resnet50": [
        ("r50.l1", 64, 64, 56, 1),
        ("r50.l2.s2", 128, 128, 56, 2),
        ("r50.l2", 128, 128, 28, 1),
        ("r50.l3.s2", 256, 256, 28, 2),
        ("r50.l3", 256, 256, 14, 1),
        ("r50.l4.s2", 512, 512, 14, 2),
        ("r50.l4", 512, 512, 7, 1),
    ],
    # The four stride-1 shapes the foundation issue's CPU target names.
    "core": [
        ("64@56", 64, 64, 56, 1),
        ("128@28", 128, 128, 28, 1),
        ("256@14", 256, 256, 14, 1),
        ("512@7", 512, 512, 7, 1),
    ],
    "smoke": [("smoke", 8, 8, 10, 1), ("smoke.s2", 8, 16, 10, 2)],
}
