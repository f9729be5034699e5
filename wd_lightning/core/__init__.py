"""Pure PyTorch: parameter grouping, norms, manual update rules, losses, closed forms, errors.

Nothing under this package imports Lightning, torchmetrics, the sweep or the command line,
so projects that only want the grouping rule or the norms pay for torch alone.
"""
