import ArchiveCrypto
import ArgumentParser
import Foundation
import Testing

@testable import walship

/// `--encryption-key-command`: the keyring a command prints, its failures said with the exit status and the first
/// line of standard error, never with what it printed; exclusive with `--encryption-keyring`.
@Suite struct KeyCommandTests {
    static func keyringFile() throws -> (path: String, keyring: Keyring) {
        let keyring = Keyring.generate()
        let path = NSTemporaryDirectory() + "walship-key-command-\(UUID().uuidString).json"
        try keyring.create(path: path)
        return (path, keyring)
    }

    @Test func theKeyringIsReadFromTheCommandsOutput() async throws {
        let (path, keyring) = try Self.keyringFile()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let read = try await keyringFromCommand("cat '\(path)'")
        #expect(read == keyring)
        #expect(try await resolveKeyring(file: nil, command: "cat '\(path)'") == keyring)
        #expect(try await resolveKeyring(file: nil, command: nil) == nil)
    }

    @Test func aFailingCommandIsNamedByItsStatusAndFirstErrorLine() async throws {
        do {
            _ = try await keyringFromCommand("echo 'vault: permission denied' >&2; echo 'second line' >&2; exit 3")
            Issue.record("a failing command gave a keyring")
        } catch {
            let text = "\(error)"
            #expect(text.contains("--encryption-key-command exited with status 3: vault: permission denied"), "\(text)")
            #expect(!text.contains("second line"))
            #expect(text.contains("hint: run the command by hand"))
        }
        do {
            _ = try await keyringFromCommand("exit 4")
            Issue.record("a failing command gave a keyring")
        } catch {
            #expect("\(error)".contains("status 4, with nothing on standard error"), "\(error)")
        }
    }

    @Test func outputThatIsNoKeyringIsNeverRepeated() async throws {
        do {
            _ = try await keyringFromCommand("echo 'c2VjcmV0LWtleS1tYXRlcmlhbA=='")
            Issue.record("text that is no keyring was taken")
        } catch {
            let text = "\(error)"
            #expect(text.contains("printed 29 bytes that are not a walship keyring"), "\(text)")
            #expect(!text.contains("c2VjcmV0"))
        }
        do {
            _ = try await keyringFromCommand("echo '{\"format\": \"other\"}'")
            Issue.record("JSON that is no keyring was taken")
        } catch {
            #expect("\(error)".contains("the output of --encryption-key-command"), "\(error)")
        }
    }

    @Test func theKeyringAndTheCommandExcludeEachOther() throws {
        let archive = ["--archive", "s3://bucket/prefix", "--archive-endpoint", "http://127.0.0.1:9"]
        let both = ["--encryption-keyring", "/etc/k.json", "--encryption-key-command", "cat /etc/k.json"]
        #expect(throws: (any Error).self) { try Verify.parse(archive + both) }
        #expect(throws: (any Error).self) { try Verify.parse(["--encryption-key-command", "cat k", "--spool", "/s"]) }
        _ = try Verify.parse(archive + ["--encryption-key-command", "cat /etc/k.json"])
        let receive = [
            "--listen", "127.0.0.1:7000", "--spool", "/var/lib/walship", "--tls-cert", "/etc/walship/site.crt", "--tls-key",
            "/etc/walship/site.key", "--tls-ca", "/etc/walship/ca.crt",
        ]
        #expect(throws: (any Error).self) { try Receive.parse(receive + archive + both) }
        #expect(throws: (any Error).self) { try Receive.parse(receive + ["--encryption-key-command", "cat k"]) }
        _ = try Receive.parse(receive + archive + ["--encryption-key-command", "cat /etc/k.json"])
    }
}
