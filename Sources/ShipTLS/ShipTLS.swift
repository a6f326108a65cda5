import Crypto
import Foundation
import NIOSSL
import SwiftASN1
import X509

/// The three files of one end of a mutually authenticated ship link (`--tls-cert`, `--tls-key`, `--tls-ca`).
public struct TLSFiles: Sendable, Equatable {
    public var certificate: String
    public var privateKey: String
    public var authority: String

    public init(certificate: String, privateKey: String, authority: String) {
        self.certificate = certificate
        self.privateKey = privateKey
        self.authority = authority
    }

    /// The receiver's side: TLS 1.3 only; a client must present a certificate signed by the CA.
    public func serverContext() throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: try chain(), privateKey: .privateKey(try key()), trustRoots: .certificates(try authorities()))
        configuration.minimumTLSVersion = .tlsv13
        return try context(configuration)
    }

    /// The sender's side: TLS 1.3 only; the receiver's certificate must be signed by the CA and name the
    /// host connected to (or `serverName`).
    public func clientContext() throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        configuration.certificateChain = try chain()
        configuration.privateKey = .privateKey(try key())
        configuration.trustRoots = .certificates(try authorities())
        configuration.certificateVerification = .fullVerification
        return try context(configuration)
    }

    /// The standby endpoint's side (`--standby-tls-cert`, `--standby-tls-key`): TLS 1.2 or newer, as libpq
    /// negotiates it; no client certificate, standbys prove who they are with SCRAM inside the session.
    public static func standbyServerContext(certificate: String, privateKey: String) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try chain(certificate, option: "--standby-tls-cert"),
            privateKey: .privateKey(try key(privateKey, option: "--standby-tls-key")))
        configuration.minimumTLSVersion = .tlsv12
        return try context(configuration, keyOption: "--standby-tls-key", certificateOption: "--standby-tls-cert")
    }

    private func chain() throws -> [NIOSSLCertificateSource] { try Self.chain(certificate, option: "--tls-cert") }

    private func key() throws -> NIOSSLPrivateKey { try Self.key(privateKey, option: "--tls-key") }

    private static func chain(_ path: String, option: String) throws -> [NIOSSLCertificateSource] {
        try load(option, path) { try NIOSSLCertificate.fromPEMFile($0).map { .certificate($0) } }
    }

    private static func key(_ path: String, option: String) throws -> NIOSSLPrivateKey {
        try load(option, path) { try NIOSSLPrivateKey(file: $0, format: .pem) }
    }

    private func authorities() throws -> [NIOSSLCertificate] {
        try Self.load("--tls-ca", authority) { try NIOSSLCertificate.fromPEMFile($0) }
    }

    private func context(_ configuration: TLSConfiguration) throws -> NIOSSLContext {
        try Self.context(configuration, keyOption: "--tls-key", certificateOption: "--tls-cert")
    }

    private static func context(
        _ configuration: TLSConfiguration, keyOption: String, certificateOption: String
    ) throws -> NIOSSLContext {
        do { return try NIOSSLContext(configuration: configuration) } catch {
            throw TLSSetupError(
                "the TLS files do not fit together (\(error)) (hint: \(keyOption) must be the key of \(certificateOption); walship certs init makes a matching set)"
            )
        }
    }

    private static func load<T>(_ option: String, _ path: String, _ body: (String) throws -> T) throws -> T {
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw TLSSetupError(
                "cannot read \(option) \(path) (hint: check the path and that this user may read it; walship certs init creates the files)"
            )
        }
        do {
            let value = try body(path)
            if let list = value as? [Any], list.isEmpty { throw TLSSetupError("no certificate in it") }
            return value
        } catch {
            throw TLSSetupError(
                "\(option) \(path) is not a PEM \(option.hasSuffix("-key") ? "private key" : "certificate"): \(error)")
        }
    }
}

public struct TLSSetupError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The sender's TLS: its context and the name the receiver's certificate must carry.
public struct ClientTLS: Sendable {
    public let context: NIOSSLContext
    /// Overrides the host of `--to` as the name to verify (`--tls-server-name`).
    public let serverName: String?

    public init(context: NIOSSLContext, serverName: String?) {
        self.context = context
        self.serverName = serverName
    }

    /// SNI and verification name: an address is verified against the certificate's IP addresses (no SNI).
    public func serverName(connectingTo host: String) -> String? {
        if let serverName { return serverName }
        return ipAddressBytes(host) == nil ? host : nil
    }
}

/// A readable account of a TLS failure, or nil when `error` is not one.
public func tlsFailure(_ error: any Error) -> String? {
    let text: String
    if let ssl = error as? NIOSSLError {
        switch ssl {
        // The peer's socket closed without a TLS close: a process killed or a cut network, at any point of the
        // link. Not a certificate problem: reported as a disconnect, and retried.
        case .uncleanShutdown: return nil
        case .handshakeFailed(let inner): text = "handshake failed: \(inner)"
        default: text = "\(ssl)"
        }
    } else if error is NIOSSLExtraError || error is BoringSSLError {
        text = "\(error)"
    } else {
        return nil
    }
    return readableTLSReason(text)
}

/// BoringSSL's reason (e.g. CERTIFICATE_VERIFY_FAILED) with a plain-words gloss, instead of its whole
/// error stack with source paths.
func readableTLSReason(_ text: String) -> String {
    let glosses = [
        "CERTIFICATE_VERIFY_FAILED":
            "the other end's certificate is not signed by our --tls-ca, has expired, or does not carry the expected name",
        "TLSV1_ALERT_UNKNOWN_CA": "the other end does not trust the CA that signed our certificate",
        "TLSV1_ALERT_CERTIFICATE_EXPIRED": "the other end says our certificate has expired",
        "TLSV1_ALERT_BAD_CERTIFICATE": "the other end rejected our certificate",
        "CERTIFICATE_REQUIRED": "the other end requires a client certificate",
        "TLSV1_CERTIFICATE_REQUIRED": "the other end requires a client certificate",
        "WRONG_VERSION_NUMBER": "the other end does not speak TLS (a plaintext peer, --insecure)",
        "HTTP_REQUEST": "the other end sent plain HTTP",
        "UNSUPPORTED_PROTOCOL": "the other end does not offer TLS 1.3",
        "TLSV1_ALERT_PROTOCOL_VERSION": "the other end does not offer TLS 1.3",
    ]
    for (reason, gloss) in glosses where text.contains(reason) {
        return "\(reason): \(gloss)"
    }
    if let range = text.range(of: "OPENSSL_internal:") {
        let rest = text[range.upperBound...]
        return String(rest.prefix { $0.isLetter || $0.isNumber || $0 == "_" })
    }
    return text
}

/// The name a peer's certificate goes by: its subject common name, else its first DNS name.
public func certificateName(_ certificate: NIOSSLCertificate) -> String? {
    guard let der = try? certificate.toDERBytes(), let parsed = try? Certificate(derEncoded: der) else { return nil }
    for rdn in parsed.subject {
        for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
            if let name = String(attribute.value) { return name }
        }
    }
    if let names = try? parsed.extensions.subjectAlternativeNames {
        for name in names { if case .dnsName(let dns) = name { return dns } }
    }
    return nil
}

/// The names `walship certs init` puts in the receiver certificate, and what to tell about them.
public struct ReceiverNames: Sendable, Equatable {
    /// What the certificate names when no `--receiver-name` is given: this host's loopback only.
    public static let loopback = ["localhost", "127.0.0.1"]

    public let names: [String]
    /// Whether the names are the loopback default: senders on another host then fail the name check.
    public let loopbackOnly: Bool

    public init(given: [String]) {
        loopbackOnly = given.isEmpty
        names = given.isEmpty ? Self.loopback : given
    }

    /// One line for standard error when the certificate names only the loopback; nil when names were given.
    public var warning: String? {
        loopbackOnly
            ? "no --receiver-name: the receiver certificate names only localhost and 127.0.0.1, so only a sender on the receiver's own host can verify it (hint: pass --receiver-name HOST, as senders write it in --to; repeatable)"
            : nil
    }

    /// The names as the summary shows them, with the loopback default marked as such.
    public var summary: String {
        names.joined(separator: ", ")
            + (loopbackOnly ? " (loopback only: for senders on another host, make a new set with --receiver-name HOST)" : "")
    }
}

/// `walship certs init`: a small CA and one key pair for each end of the link; `walship certs renew`: new key
/// pairs for both ends from the same CA, so each end can change over on its own.
public enum CertificateAuthority {
    public struct Created: Sendable {
        public var files: [String]
        /// When the new certificates stop being valid (`renew`: never after the CA).
        public var notValidAfter: Date
        /// `renew`: the directory the replaced certificates and keys were moved to.
        public var replaced: String?
    }

    /// One certificate to issue: `file`.crt and `file`.key, named `commonName` (what --allow-source binds), for
    /// `usages`, with `names` as its subject alternative names (what a peer connecting to it verifies).
    public struct Leaf: Sendable, Equatable {
        public var file: String
        public var commonName: String
        public var usages: [ExtendedKeyUsage.Usage]
        public var names: [String]

        public init(file: String, commonName: String, usages: [ExtendedKeyUsage.Usage], names: [String]) {
            self.file = file
            self.commonName = commonName
            self.usages = usages
            self.names = names
        }

        /// A site's certificate for symmetric sites: its receiver's (server) and its sender's (client) in one.
        public static func site(_ name: String, hosts: [String]) -> Leaf {
            Leaf(file: name, commonName: name, usages: [.serverAuth, .clientAuth], names: hosts)
        }
    }

    /// Writes ca.crt, ca.key, receiver.crt, receiver.key, sender.crt, sender.key into `directory`, all 0600.
    /// `receiverNames` go into the receiver certificate's subject alternative names (DNS names or IP
    /// addresses: what senders connect to). The CA outlives the certificates (`caValidDays`), so that they can
    /// be renewed from it (`renew`) one end at a time.
    public static func create(
        in directory: String, receiverNames: [String], senderName: String, validDays: Int,
        caValidDays: Int? = nil, now: Date = Date()
    ) throws -> Created {
        try create(
            in: directory,
            leaves: [
                Leaf(
                    file: "receiver", commonName: receiverNames.first ?? "walship-receiver", usages: [.serverAuth],
                    names: receiverNames),
                Leaf(file: "sender", commonName: senderName, usages: [.clientAuth], names: [senderName]),
            ], validDays: validDays, caValidDays: caValidDays, now: now)
    }

    /// The same with any set of certificates: `leaves` (`walship certs init --site`: one per site, each for both
    /// purposes).
    public static func create(
        in directory: String, leaves: [Leaf], validDays: Int, caValidDays: Int? = nil, now: Date = Date()
    ) throws -> Created {
        let fm = FileManager.default
        let files = ["ca.crt", "ca.key"] + leaves.flatMap { [$0.file + ".crt", $0.file + ".key"] }
        guard Set(leaves.map(\.file)).count == leaves.count, !leaves.contains(where: { $0.file == "ca" }) else {
            throw TLSSetupError("certificate names must differ from each other and from ca")
        }
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        if let existing = files.first(where: { fm.fileExists(atPath: directory + "/" + $0) }) {
            throw TLSSetupError(
                "\(directory)/\(existing) exists; walship certs init never overwrites keys (hint: choose an empty directory; walship certs renew makes new certificates from an existing CA)"
            )
        }
        let notBefore = now.addingTimeInterval(-300)
        let caKey = P256.Signing.PrivateKey()
        let caName = try DistinguishedName {
            OrganizationName("walship")
            CommonName("walship link CA")
        }
        let ca = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(caKey.publicKey), notValidBefore: notBefore,
            notValidAfter: now.addingTimeInterval(Double(max(caValidDays ?? validDays, validDays)) * 86400),
            issuer: caName, subject: caName, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(caKey.publicKey))
            },
            issuerPrivateKey: .init(caKey))
        let issuer = Issuer(certificate: ca, key: .init(caKey))
        let notAfter = now.addingTimeInterval(Double(validDays) * 86400)
        let issued = try leaves.map { leaf in
            (
                leaf.file,
                try issuer.leaf(
                    subject: try name(leaf.commonName), usages: leaf.usages,
                    alternativeNames: SubjectAlternativeNames(leaf.names.map(generalName)), notBefore: notBefore,
                    notAfter: notAfter)
            )
        }
        var written: [String] = []
        try write(try ca.serializeAsPEM().pemString + "\n", to: directory + "/ca.crt", into: &written)
        try write(caKey.pemRepresentation + "\n", to: directory + "/ca.key", into: &written)
        try writeLeaves(issued, in: directory, into: &written)
        return Created(files: written, notValidAfter: notAfter, replaced: nil)
    }

    /// New key pairs for both ends, signed by the CA in `directory` (its ca.crt and ca.key), with the names and
    /// uses of the certificates they replace; those, with their keys, move to `directory/replaced-<time>/`.
    /// Valid `validDays`, but never beyond the CA. A CA that expires within `minimumDays` is refused: only a new
    /// CA (certs init) helps then, and both ends must change over to it together.
    public static func renew(in directory: String, validDays: Int, minimumDays: Int = 30, now: Date = Date()) throws -> Created {
        func read(_ name: String) throws -> String {
            let path = directory + "/" + name
            guard let data = FileManager.default.contents(atPath: path) else {
                throw TLSSetupError("cannot read \(path) (hint: give the directory walship certs init wrote, with ca.key)")
            }
            return String(decoding: data, as: UTF8.self)
        }
        func certificate(_ name: String) throws -> Certificate {
            do { return try Certificate(pemEncoded: try read(name)) } catch let error as TLSSetupError { throw error } catch {
                throw TLSSetupError("\(directory)/\(name) is not a PEM certificate")
            }
        }
        let ca = try certificate("ca.crt")
        let caKey: Certificate.PrivateKey
        do { caKey = try Certificate.PrivateKey(pemEncoded: try read("ca.key")) } catch let error as TLSSetupError {
            throw error
        } catch {
            throw TLSSetupError("\(directory)/ca.key is not a PEM private key")
        }
        guard caKey.publicKey == ca.publicKey else {
            throw TLSSetupError("\(directory)/ca.key is not the key of \(directory)/ca.crt")
        }
        guard ca.notValidAfter.timeIntervalSince(now) >= Double(minimumDays) * 86400 else {
            throw TLSSetupError(
                "the CA in \(directory)/ca.crt \(ca.notValidAfter < now ? "expired" : "expires") at \(ca.notValidAfter); certificates renewed from it would not last (hint: walship certs init makes a new CA; both ends then change over together)"
            )
        }
        // Every certificate beside the CA: the receiver's and the sender's, or the sites' (certs init --site).
        let leafNames =
            ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasSuffix(".crt") && $0 != "ca.crt" }.map { String($0.dropLast(4)) }.sorted()
        guard !leafNames.isEmpty else {
            throw TLSSetupError(
                "cannot read \(directory)/receiver.crt (hint: give the directory walship certs init wrote, with ca.key)")
        }
        var olds: [(String, Certificate)] = []
        for file in leafNames {
            let old = try certificate(file + ".crt")
            guard old.issuer == ca.subject, ca.publicKey.isValidSignature(old.signature, for: old) else {
                throw TLSSetupError(
                    "\(directory)/\(file).crt was not issued by \(directory)/ca.crt; renew only what this CA signed")
            }
            olds.append((file, old))
        }
        let notBefore = now.addingTimeInterval(-300)
        let notAfter = min(now.addingTimeInterval(Double(validDays) * 86400), ca.notValidAfter)
        let issuer = Issuer(certificate: ca, key: caKey)
        let issued = try olds.map { file, old in
            (
                file,
                try issuer.leaf(
                    subject: old.subject, usages: Array(try old.extensions.extendedKeyUsage ?? ExtendedKeyUsage()),
                    alternativeNames: try old.extensions.subjectAlternativeNames ?? SubjectAlternativeNames([]),
                    notBefore: notBefore, notAfter: notAfter)
            )
        }

        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        let replaced = directory + "/replaced-" + formatter.string(from: now)
        let fm = FileManager.default
        do {
            try fm.createDirectory(atPath: replaced, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            for name in leafNames.flatMap({ [$0 + ".crt", $0 + ".key"] }) where fm.fileExists(atPath: directory + "/" + name) {
                try fm.moveItem(atPath: directory + "/" + name, toPath: replaced + "/" + name)
            }
        } catch {
            throw TLSSetupError("cannot move the old certificates to \(replaced): \(error)")
        }
        var written: [String] = []
        try writeLeaves(issued, in: directory, into: &written)
        return Created(files: written, notValidAfter: notAfter, replaced: replaced)
    }

    /// A CA certificate and its key, issuing the certificates of the two ends.
    struct Issuer {
        let certificate: Certificate
        let key: Certificate.PrivateKey

        func leaf(
            subject: DistinguishedName, usages: [ExtendedKeyUsage.Usage], alternativeNames: SubjectAlternativeNames,
            notBefore: Date, notAfter: Date
        ) throws -> (Certificate, P256.Signing.PrivateKey) {
            let leafKey = P256.Signing.PrivateKey()
            let leaf = try Certificate(
                version: .v3, serialNumber: .init(), publicKey: .init(leafKey.publicKey), notValidBefore: notBefore,
                notValidAfter: notAfter, issuer: certificate.subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage(usages)
                    alternativeNames
                    AuthorityKeyIdentifier(keyIdentifier: SubjectKeyIdentifier(hash: certificate.publicKey).keyIdentifier)
                },
                issuerPrivateKey: key)
            return (leaf, leafKey)
        }
    }

    static func name(_ commonName: String) throws -> DistinguishedName {
        try DistinguishedName {
            OrganizationName("walship")
            CommonName(commonName)
        }
    }

    /// Each issued certificate as `file`.crt and its key as `file`.key.
    static func writeLeaves(
        _ leaves: [(String, (Certificate, P256.Signing.PrivateKey))], in directory: String, into written: inout [String]
    ) throws {
        for (file, (certificate, key)) in leaves {
            try write(try certificate.serializeAsPEM().pemString + "\n", to: directory + "/\(file).crt", into: &written)
            try write(key.pemRepresentation + "\n", to: directory + "/\(file).key", into: &written)
        }
    }

    /// A new file, 0600; never over an existing one.
    static func write(_ text: String, to path: String, into written: inout [String]) throws {
        guard !FileManager.default.fileExists(atPath: path),
            FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
        else { throw TLSSetupError("cannot write \(path)") }
        written.append(path)
    }

    /// An IP address where the text is one (senders connecting by address), else a DNS name.
    static func generalName(_ text: String) -> GeneralName {
        if let bytes = ipAddressBytes(text) { return .ipAddress(ASN1OctetString(contentBytes: bytes)) }
        return .dnsName(text)
    }
}

/// The network-order bytes of an IPv4 or IPv6 address, or nil when `text` is a host name.
func ipAddressBytes(_ text: String) -> ArraySlice<UInt8>? {
    var v4 = in_addr()
    if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { ArraySlice($0) } }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { ArraySlice($0) } }
    return nil
}
