import VLMCLI

await VLMCommand.run()
