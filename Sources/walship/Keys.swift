import ArchiveCrypto
import ArgumentParser
import Foundation

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Keys that encrypt the archive in object storage (--encryption-keyring).",
        subcommands: [KeysInit.self, KeysRotate.self])
}

struct KeysInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a keyring with one new key (mode 0600; never overwrites).",
        discussion: """
            The keyring decrypts the whole archive: a restore from the bucket needs it, and the DR host may be what is lost. Keep a copy away from the DR host (a password safe, a sealed offline medium) before the receiver uses it, and again after every walship keys rotate.
            Example:
              walship keys init /etc/walship/archive-keyring.json
            """)

    @Argument(help: "The keyring file to create.")
    var file: String

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.apply(command: "keys init")
        let keyring = Keyring.generate()
        do {
            try keyring.create(path: file)
        } catch {
            throw fail("keys init", error, kind: .setUp)
        }
        print(
            """
            created keyring \(file) (mode 0600) with key \(keyring.currentID)
            Escrow it now: copy \(file) to a place away from the DR host (a password safe or a sealed offline medium),
            readable only by those allowed to restore. Without it nothing in the archive can be decrypted, and the
            DR host that holds it may be what the disaster takes. Copy it again after every walship keys rotate.
            Give it to the receiver with --encryption-keyring \(file) (owned by the receiver's user, mode 0600).
            """)
    }
}

struct KeysRotate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Add a new key to a keyring and make it the one new objects are encrypted with.",
        discussion: """
            The old keys stay in the keyring: objects already archived keep their key (named in each object's header) and still open. Restart the receiver to use the new key, and escrow the rotated keyring again.
            Example:
              walship keys rotate /etc/walship/archive-keyring.json
            """)

    @Argument(help: "The keyring file to rotate.")
    var file: String

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.apply(command: "keys rotate")
        var keyring: Keyring
        do {
            keyring = try Keyring.load(path: file)
        } catch {
            throw fail("keys rotate", error, kind: .setUp)
        }
        let added = keyring.rotate()
        do {
            try keyring.replace(path: file)
        } catch {
            throw fail("keys rotate", error)
        }
        print(
            """
            added key \(added.id) to \(file); new objects are encrypted with it, the \(keyring.keys.count - 1) older key(s) still open what they encrypted
            Escrow the rotated keyring again (a copy away from the DR host), then restart walship receive to use the new key.
            """)
    }
}
