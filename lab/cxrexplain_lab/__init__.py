"""The lab: the procedural phantom set, training losses, training, the evaluation metrics and commands.

Never shipped in an archive. It imports the engine (:mod:`cxrexplain`), image input and the render package;
nothing on the serving side imports it.
"""
