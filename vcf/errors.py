"""Exception classes: every problem a user can fix is a VcfError with a one-line message."""


class VcfError(Exception):
    """Base class of the errors the CLI shows as one line and exit code 1."""


class CollectionError(VcfError):
    """A collection directory, or a file the stage needs inside it, is missing or wrong."""


class IndexFormatError(VcfError):
    """A line of an index file (id.imagepath.txt, a CSV, id.txt) cannot be parsed."""


class OutputExistsError(VcfError):
    """An output exists and was made with other settings; ``overwrite`` is needed."""


class LockedError(VcfError):
    """Another live process holds the lock of an output."""


class FeatureFileError(VcfError):
    """A BigFile directory is inconsistent (shape.txt vs id.txt vs feature.bin)."""


class ModelError(VcfError):
    """A model name, layer or weights file that cannot be used."""


class StageFailures(VcfError):
    """Some items failed; the rest of the work completed and the failures file lists them."""
