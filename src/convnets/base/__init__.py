"""The torch-free base every layer may use: the run folder (`runs`), prediction rows (`predictions`),
the user-facing choice lists (`choices`), the error policy (`errors`), atomic writes (`atomic`), every
picture's set-up (`plots`), process-level CPU facts (`runtime`) and lazy package exports (`lazy`).

Nothing here imports torch or any other convnets package, so the CLI's ``--help``, ``predict`` on an
exported model and ``serve`` start without it.
"""
