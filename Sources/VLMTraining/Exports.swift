// The ops and layers a fine-tune builds on, for every user of the trainer.
@_exported import VLMAutodiff
