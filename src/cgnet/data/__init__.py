"""Data: dataset descriptions (`catalog`), list-file datasets (`listset`), augmentation
(`augment`), statistics (`stats`), the known datasets (`catalog.DATASETS`) and their reader
modules, and the `cgnet data` commands."""
