import Foundation
import VLMTokenizers
import XCTest

final class ChatTemplateTests: XCTestCase {
    func testRenderingMatchesTransformersJinja() throws {
        let json = try Fixtures.json("chat.json") as! [String: Any]
        let smolJinja = json["smollm2_jinja"] as! String
        let cases = json["cases"] as! [[String: Any]]
        XCTAssertGreaterThan(cases.count, 20)
        for c in cases {
            let name = c["template"] as! String
            let jinja = c["jinja"] as? String == "smollm2" ? smolJinja : nil
            let template = try ChatTemplate.load(name: name, directory: Fixtures.prompts, jinja: jinja)
            let messages = (c["messages"] as! [[String: String]]).map {
                ChatMessage(role: ChatMessage.Role(rawValue: $0["role"]!)!, text: $0["content"]!)
            }
            let generation = c["add_generation_prompt"] as! Bool
            XCTAssertEqual(template.render(messages, addGenerationPrompt: generation), c["text"] as! String,
                           "\(name) \(messages.map(\.text)) generation=\(generation)")
        }
    }

    func testSmolLM2DefaultSystemComesFromJinja() throws {
        let json = try Fixtures.json("chat.json") as! [String: Any]
        let template = try ChatTemplate.load(name: "chatml", directory: Fixtures.prompts, jinja: json["smollm2_jinja"] as? String)
        XCTAssertEqual(template.systemDefault, "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        XCTAssertEqual(template.stopStrings, ["<|im_end|>"])
        let plain = try ChatTemplate.load(name: "chatml", directory: Fixtures.prompts)
        XCTAssertNil(plain.systemDefault)
    }

    func testDefaultSystemOnlyFromConstantLiterals() {
        // Qwen2.5 style: the first system header is followed by an expression, the second by the default.
        let qwen = "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- endif %}{{- '<|im_end|>\\n' }}{%- else %}{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
        let template = try? ChatTemplate.load(name: "chatml", directory: Fixtures.prompts, jinja: qwen)
        XCTAssertEqual(template?.systemDefault, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
        let noDefault = try? ChatTemplate.load(name: "chatml", directory: Fixtures.prompts,
                                               jinja: "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}")
        XCTAssertNil(noDefault?.systemDefault)
    }

    func testEveryPromptFileLoads() throws {
        for name in ["chatml", "llava-v1", "llama-3", "mistral", "plain"] {
            let template = try ChatTemplate.load(name: name, directory: Fixtures.prompts)
            XCTAssertFalse(template.stopStrings.isEmpty, name)
        }
        XCTAssertThrowsError(try ChatTemplate.load(name: "nope", directory: Fixtures.prompts))
    }

    func testVicunaPromptShape() throws {
        let template = try ChatTemplate.load(name: "llava-v1", directory: Fixtures.prompts)
        let text = template.render([ChatMessage(role: .user, text: "<image>\nWhat is this?")], addGenerationPrompt: true)
        XCTAssertEqual(text, "<s>A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. USER: <image>\nWhat is this? ASSISTANT:")
    }

    func testDetect() throws {
        XCTAssertEqual(try ChatTemplate.detect(jinja: "{{ '<|im_start|>' }}", architecture: nil), "chatml")
        XCTAssertEqual(try ChatTemplate.detect(jinja: "<|start_header_id|>", architecture: "llama"), "llama-3")
        XCTAssertEqual(try ChatTemplate.detect(jinja: "[INST] x [/INST]", architecture: "llama"), "mistral")
        XCTAssertEqual(try ChatTemplate.detect(jinja: "{{ 'USER: ' + m }}{{ 'ASSISTANT:' }}", architecture: "llama"), "llava-v1")
        // transformers' LLaVA template spells the roles from the message.
        XCTAssertEqual(try ChatTemplate.detect(jinja: "{{ message['role'].upper() + ': ' }}", architecture: "llava"), "llava-v1")
        XCTAssertEqual(try ChatTemplate.detect(jinja: nil, architecture: "llava"), "llava-v1")
        XCTAssertEqual(try ChatTemplate.detect(jinja: nil, architecture: "qwen2"), "chatml")
    }

    /// A Jinja template none of ours matches (Gemma's turns, Phi-3's tags) is one line naming
    /// the known templates and --template, not a silent guess.
    func testUnknownJinjaTemplateNamesTheOption() {
        for jinja in ["{{ '<start_of_turn>user\n' + content + '<end_of_turn>\n' }}", "{{ '<|user|>\n' + content + '<|end|>' }}"] {
            XCTAssertThrowsError(try ChatTemplate.detect(jinja: jinja, architecture: "llama")) { error in
                let text = "\(error)"
                XCTAssertTrue(text.hasPrefix("the model's own chat template matches none of vlmsh's (chatml, llama-3, llava-v1, mistral, plain"), text)
                XCTAssertTrue(text.hasSuffix("choose one with --template NAME"), text)
            }
        }
    }

    func testDefaultDirectoryFindsPrompts() throws {
        let directory = try XCTUnwrap(ChatTemplate.defaultDirectory(environment: [:]))
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/chatml.txt"), directory)
    }

    /// BuiltinTemplates.swift is generated from prompts/; editing a template without regenerating fails here.
    func testBuiltinTemplatesAreThePromptsFolder() throws {
        var files: [String: String] = [:]
        for name in ChatTemplate.names(inFolder: Fixtures.prompts) {
            files[name] = try String(contentsOfFile: Fixtures.prompts + "/\(name).txt", encoding: .utf8)
        }
        XCTAssertFalse(files.isEmpty)
        XCTAssertEqual(Set(ChatTemplate.builtinTexts.keys), Set(files.keys), "run `make templates` after changing prompts/")
        for (name, text) in files {
            XCTAssertEqual(ChatTemplate.builtinTexts[name], text, "\(name): run `make templates` after changing prompts/")
        }
    }

    func testBuiltinTemplatesLoadWithoutAFolder() throws {
        let messages = [ChatMessage(role: .system, text: "Be brief."), ChatMessage(role: .user, text: " Hi "),
                        ChatMessage(role: .assistant, text: "Hello."), ChatMessage(role: .user, text: "Bye")]
        for name in ChatTemplate.builtinTexts.keys {
            let builtin = try ChatTemplate.load(name: name, directory: nil)
            let file = try ChatTemplate.load(name: name, directory: Fixtures.prompts)
            XCTAssertEqual(builtin.render(messages, addGenerationPrompt: true), file.render(messages, addGenerationPrompt: true), name)
            XCTAssertEqual(builtin.stopStrings, file.stopStrings, name)
        }
        XCTAssertThrowsError(try ChatTemplate.load(name: "nope", directory: nil)) { error in
            XCTAssertTrue("\(error)".contains("chatml"), "the error names the known templates: \(error)")
        }
    }

    /// $VLMSH_PROMPTS adds templates and replaces built-ins of the same name; the others stay.
    func testPromptsFolderOverridesAndAddsToBuiltins() throws {
        let folder = NSTemporaryDirectory() + "vlmsh-prompts-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "user_prefix: \"Q: \"\ngeneration_prompt: A:\nstop: END\n".write(toFile: folder + "/chatml.txt", atomically: true, encoding: .utf8)
        try "user_prefix: \">> \"\nstop: STOP\n".write(toFile: folder + "/terse.txt", atomically: true, encoding: .utf8)

        let directory = ChatTemplate.defaultDirectory(environment: ["VLMSH_PROMPTS": folder])
        XCTAssertEqual(directory, folder)
        let user = [ChatMessage(role: .user, text: "hi")]
        XCTAssertEqual(try ChatTemplate.load(name: "chatml", directory: directory).render(user, addGenerationPrompt: true), "Q: hiA:")
        XCTAssertEqual(try ChatTemplate.load(name: "terse", directory: directory).stopStrings, ["STOP"])
        XCTAssertEqual(try ChatTemplate.load(name: "mistral", directory: directory).stopStrings,
                       try ChatTemplate.load(name: "mistral", directory: nil).stopStrings)
        XCTAssertThrowsError(try ChatTemplate.load(name: "terse", directory: nil))
    }
}
