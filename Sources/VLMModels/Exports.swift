// Every architecture is written over these ops and layers.
@_exported import VLMAutodiff
