"""Many weight decays at once: the vectorised ensemble, the sweep runner and its figures.

Built on :mod:`wd_lightning.training` and :mod:`wd_lightning.core`; never imports the command line.
"""
