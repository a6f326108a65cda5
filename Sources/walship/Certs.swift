import ArgumentParser
import Foundation
import ShipTLS

struct Certs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Certificates for the ship link.",
        subcommands: [CertsInit.self])
}

struct CertsInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a small CA and a key pair for each end of the link (files 0600).",
        discussion: """
            Writes DIR/ca.crt, ca.key, receiver.crt, receiver.key, sender.crt, sender.key. Copy ca.crt, receiver.crt and receiver.key to the DR site, ca.crt, sender.crt and sender.key beside the primary; keep ca.key offline.
            Example:
              walship certs init /etc/walship/certs --receiver-name dr.hospital.example --sender-name pg-main
            """)

    @Argument(help: "Directory to create the files in (must not hold them already).")
    var directory: String

    @Option(help: "Name senders use to reach the receiver (DNS name or IP address, as in --to); repeatable.")
    var receiverName: [String] = []

    @Option(help: "Name of the sender's certificate (what --allow-source binds to a system).")
    var senderName = "walship-sender"

    @Option(help: "Days the certificates stay valid.")
    var days = 825

    /// Start validity this many days ago (tests use it to make expired certificates).
    @Option(help: .hidden)
    var backdateDays = 0

    func validate() throws {
        guard (1...3650).contains(days) else { throw ValidationError("--days must be 1...3650") }
        guard !senderName.isEmpty else { throw ValidationError("--sender-name cannot be empty") }
    }

    func run() throws {
        let names = receiverName.isEmpty ? ["localhost", "127.0.0.1"] : receiverName
        do {
            let created = try CertificateAuthority.create(in: directory, receiverNames: names, senderName: senderName, validDays: days,
                                                       now: Date().addingTimeInterval(-Double(backdateDays) * 86400))
            for file in created.files { print(file) }
            print("receiver certificate names: \(names.joined(separator: ", ")); sender certificate name: \(senderName); valid \(days) days")
        } catch {
            throw fail("certs init", error)
        }
    }
}
