"""Data: dataset descriptions (`catalog`), list-file datasets (`listset`), augmentation
(`augment`), statistics (`stats`), the CamVid and Cityscapes tools and the `cgnet data` commands."""
