from .catalog import DatasetCatalog, MetadataCatalog  # noqa: F401
