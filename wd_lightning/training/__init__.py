"""The Lightning parts: the module, models, data, callbacks, checkpoints, resume and logging.

Built on :mod:`wd_lightning.core`; never imports the sweep or the command line.
"""
