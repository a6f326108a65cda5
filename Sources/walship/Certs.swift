import ArgumentParser
import Foundation
import ShipTLS

struct Certs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Certificates for the ship link.",
        subcommands: [CertsInit.self, CertsRenew.self])
}

struct CertsInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a small CA and a key pair for each end of the link (files 0600).",
        discussion: """
            Writes DIR/ca.crt, ca.key, receiver.crt, receiver.key, sender.crt, sender.key. Copy ca.crt, receiver.crt and receiver.key to the DR site, ca.crt, sender.crt and sender.key beside the primary; keep ca.key offline: walship certs renew makes new certificates from it before these expire.
            For symmetric sites (walship switchover) give --site once per site instead: DIR/NAME.crt and NAME.key, one certificate per site for both its receiver (server) and its sender (client), named NAME (what --allow-source binds at the other site) and valid for the host names after '='.
            Examples:
              walship certs init /etc/walship/certs --receiver-name dr.hospital.example --sender-name pg-main
              walship certs init /etc/walship/certs --site hospital=db.hospital.example --site dr=dr.hospital.example
            """)

    @Argument(help: "Directory to create the files in (must not hold them already).")
    var directory: String

    @Option(
        help:
            "Name senders use to reach the receiver (DNS name or IP address, as in --to); repeatable. Without it the certificate names only localhost and 127.0.0.1."
    )
    var receiverName: [String] = []

    @Option(help: "Name of the sender's certificate (what --allow-source binds to a system).")
    var senderName = "walship-sender"

    @Option(
        help: ArgumentHelp(
            "A site of a symmetric pair (repeatable): one certificate for its receiver and its sender, named NAME, valid for HOST (comma-separated; default localhost and 127.0.0.1). Excludes --receiver-name and --sender-name.",
            valueName: "NAME[=HOST,...]"))
    var site: [String] = []

    @Option(help: "Days the certificates stay valid.")
    var days = 825

    @Option(help: "Days the CA stays valid (at least --days): certs renew issues new certificates from it until then.")
    var caDays = 3650

    /// Start validity this many days ago (tests use it to make expired certificates).
    @Option(help: .hidden)
    var backdateDays = 0

    func validate() throws {
        guard (1...3650).contains(days) else { throw ValidationError("--days must be 1...3650") }
        guard (days...7300).contains(caDays) else { throw ValidationError("--ca-days must be --days (\(days)) to 7300") }
        guard !senderName.isEmpty else { throw ValidationError("--sender-name cannot be empty") }
        if !site.isEmpty {
            guard receiverName.isEmpty, senderName == "walship-sender" else {
                throw ValidationError("--site excludes --receiver-name and --sender-name: each site's certificate serves both")
            }
            let names = try site.map { try Self.parseSite($0).name }
            guard Set(names).count == names.count else { throw ValidationError("--site names must differ") }
        }
    }

    /// `NAME[=HOST,...]`.
    static func parseSite(_ text: String) throws -> (name: String, hosts: [String]) {
        let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
        let name = parts.first ?? ""
        guard !name.isEmpty, name != "ca", name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." })
        else {
            throw ValidationError(
                "--site \(text): the name must be letters, digits, '-', '_' or '.', and not ca (e.g. --site dr=dr.hospital.example)"
            )
        }
        let hosts = parts.count > 1 ? parts[1].split(separator: ",").map(String.init).filter { !$0.isEmpty } : []
        return (name, hosts)
    }

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.apply(command: "certs init")
        if !site.isEmpty { return try runSites() }
        let names = ReceiverNames(given: receiverName)
        do {
            let created = try CertificateAuthority.create(
                in: directory, receiverNames: names.names, senderName: senderName, validDays: days,
                caValidDays: caDays, now: Date().addingTimeInterval(-Double(backdateDays) * 86400))
            if let warning = names.warning {
                writeDiagnostic(Data("walship certs init: warning: \(warning)\n".utf8))
            }
            for file in created.files { print(file) }
            print(
                "receiver certificate names: \(names.summary); sender certificate name: \(senderName); valid \(days) days, the CA \(caDays)"
            )
        } catch {
            throw fail("certs init", error)
        }
    }
}

extension CertsInit {
    /// One certificate per site, for both of its ends.
    private func runSites() throws {
        let sites = try site.map(Self.parseSite)
        do {
            let created = try CertificateAuthority.create(
                in: directory,
                leaves: sites.map { .site($0.name, hosts: ReceiverNames(given: $0.hosts).names) }, validDays: days,
                caValidDays: caDays, now: Date().addingTimeInterval(-Double(backdateDays) * 86400))
            for (name, hosts) in sites where hosts.isEmpty {
                writeDiagnostic(
                    Data(
                        "walship certs init: warning: site \(name) has no host names: its certificate names only localhost and 127.0.0.1 (hint: --site \(name)=HOST, as the other site writes it in --to)\n"
                            .utf8))
            }
            for file in created.files { print(file) }
            print(
                "site certificates (receiver and sender in one): "
                    + sites.map { "\($0.name) for \(ReceiverNames(given: $0.hosts).names.joined(separator: ", "))" }.joined(
                        separator: "; ") + "; valid \(days) days, the CA \(caDays)")
            print(
                "next: copy ca.crt and NAME.crt/NAME.key to each site; there --tls-cert NAME.crt --tls-key NAME.key --tls-ca ca.crt serve walship receive and walship send alike, and --allow-source names the other site"
            )
        } catch {
            throw fail("certs init", error)
        }
    }
}

struct CertsRenew: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "renew",
        abstract: "New certificates and keys for both ends, from the CA in DIR (before the old ones expire).",
        discussion: """
            Reads DIR/ca.crt and ca.key, issues receiver.crt/receiver.key and sender.crt/sender.key with the names of the ones they replace, and moves those to DIR/replaced-<time>/. Both generations come from one CA, so each end changes over on its own: copy receiver.crt and receiver.key to the DR site and restart walship receive, copy sender.crt and sender.key beside the primary and restart walship send (and use them for walship backup). walship send and receive alert 30 days before a certificate they use expires (--alert-certificate-days).
            Example:
              walship certs renew /root/walship-certs
            """)

    @Argument(help: "The directory walship certs init wrote (with ca.key).")
    var directory: String

    @Option(help: "Days the new certificates stay valid (never beyond the CA).")
    var days = 825

    func validate() throws {
        guard (1...3650).contains(days) else { throw ValidationError("--days must be 1...3650") }
    }

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.apply(command: "certs renew")
        do {
            let renewed = try CertificateAuthority.renew(in: directory, validDays: days)
            for file in renewed.files { print(file) }
            let until = ISO8601DateFormatter().string(from: renewed.notValidAfter)
            let requested = Date().addingTimeInterval(Double(days) * 86400)
            print(
                "valid until \(until)"
                    + (renewed.notValidAfter < requested.addingTimeInterval(-86400)
                        ? " (the CA's end; walship certs init makes a new CA before then)" : "")
                    + "; the replaced files are in \(renewed.replaced ?? directory)")
            print(
                "next: copy receiver.crt and receiver.key to the DR site and restart walship receive; copy sender.crt and sender.key beside the primary and restart walship send, one end after the other"
            )
        } catch {
            throw fail("certs renew", error)
        }
    }
}
