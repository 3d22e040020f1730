import VLMCLI

await VLMCommand.main()
