import Crypto
import Foundation

/// A SCRAM-SHA-256 credential as PostgreSQL stores it in pg_authid:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64). The endpoint needs only this, so
/// no plaintext password has to sit on the DR host.
public struct SCRAMVerifier: Sendable, Hashable {
    public var iterations: Int
    public var salt: [UInt8]
    public var storedKey: [UInt8]
    public var serverKey: [UInt8]

    /// Parses a stored verifier; nil when `text` is not one.
    public init?(parsing text: String) {
        let text = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.hasPrefix("SCRAM-SHA-256$") else { return nil }
        let parts = text.dropFirst("SCRAM-SHA-256$".count).split(separator: "$", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        let first = parts[0].split(separator: ":"), second = parts[1].split(separator: ":")
        guard first.count == 2, second.count == 2, let iterations = Int(first[0]), iterations >= 1,
            let salt = Data(base64Encoded: String(first[1])), let stored = Data(base64Encoded: String(second[0])),
            let server = Data(base64Encoded: String(second[1])), stored.count == 32, server.count == 32, !salt.isEmpty
        else { return nil }
        self.iterations = iterations
        self.salt = Array(salt)
        self.storedKey = Array(stored)
        self.serverKey = Array(server)
    }

    /// Derives the verifier of `password` (as PostgreSQL does for `password_encryption = scram-sha-256`).
    public init(password: String, salt: [UInt8], iterations: Int = 4096) {
        let salted = SCRAM.hi(Array(password.utf8), salt: salt, iterations: iterations)
        let clientKey = SCRAM.hmac(salted, Array("Client Key".utf8))
        self.iterations = iterations
        self.salt = salt
        self.storedKey = Array(SHA256.hash(data: clientKey))
        self.serverKey = SCRAM.hmac(salted, Array("Server Key".utf8))
    }

    public var text: String {
        "SCRAM-SHA-256$\(iterations):\(Data(salt).base64EncodedString())$\(Data(storedKey).base64EncodedString()):\(Data(serverKey).base64EncodedString())"
    }
}

/// The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL's SASL exchange carries it. No
/// channel binding: the standby endpoint does not offer SCRAM-SHA-256-PLUS.
public struct SCRAMServer: Sendable, Hashable {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case malformed(String)
        case wrongProof
        public var description: String {
            switch self {
            case .malformed(let what): "malformed SCRAM message: \(what)"
            case .wrongProof: "password authentication failed"
            }
        }
    }

    let verifier: SCRAMVerifier
    let serverNonce: String
    private var gs2Header = ""
    private var clientFirstBare = ""
    private var serverFirst = ""
    private var nonce = ""

    public init(verifier: SCRAMVerifier, serverNonce: String) {
        self.verifier = verifier
        self.serverNonce = serverNonce
    }

    /// Takes client-first-message, returns server-first-message.
    public mutating func clientFirst(_ message: String) throws -> String {
        // gs2-header: "n,," (no binding) or "y,," (client could bind but we do not offer it); "p=" is refused.
        let fields = message.split(separator: ",", maxSplits: 2, omittingEmptySubsequences: false)
        guard fields.count == 3, fields[0] == "n" || fields[0] == "y", fields[1].isEmpty else {
            throw Failure.malformed("unsupported channel binding or header")
        }
        gs2Header = "\(fields[0]),,"
        clientFirstBare = String(fields[2])
        guard let clientNonce = Self.attribute("r", in: clientFirstBare), !clientNonce.isEmpty,
            clientNonce.allSatisfy({ $0.isASCII && $0 != "," && !$0.isWhitespace })
        else { throw Failure.malformed("missing client nonce") }
        nonce = clientNonce + serverNonce
        serverFirst = "r=\(nonce),s=\(Data(verifier.salt).base64EncodedString()),i=\(verifier.iterations)"
        return serverFirst
    }

    /// Takes client-final-message, returns server-final-message ("v=...") when the proof is right.
    public func clientFinal(_ message: String) throws -> String {
        guard let proofRange = message.range(of: ",p=") else { throw Failure.malformed("missing proof") }
        let withoutProof = String(message[..<proofRange.lowerBound])
        guard let binding = Self.attribute("c", in: withoutProof), Data(base64Encoded: binding) == Data(gs2Header.utf8) else {
            throw Failure.malformed("channel binding does not match")
        }
        guard Self.attribute("r", in: withoutProof) == nonce else { throw Failure.malformed("nonce does not match") }
        guard let proof = Data(base64Encoded: String(message[proofRange.upperBound...])), proof.count == 32 else {
            throw Failure.malformed("proof is not 32 bytes of base64")
        }
        let authMessage = Array("\(clientFirstBare),\(serverFirst),\(withoutProof)".utf8)
        let clientSignature = SCRAM.hmac(verifier.storedKey, authMessage)
        let clientKey = zip(proof, clientSignature).map { $0 ^ $1 }
        let computed = Array(SHA256.hash(data: clientKey))
        // Constant time: compare every byte.
        guard computed.count == verifier.storedKey.count,
            zip(computed, verifier.storedKey).reduce(UInt8(0), { $0 | ($1.0 ^ $1.1) }) == 0
        else { throw Failure.wrongProof }
        return "v=" + Data(SCRAM.hmac(verifier.serverKey, authMessage)).base64EncodedString()
    }

    static func attribute(_ name: Character, in message: String) -> String? {
        for part in message.split(separator: ",") where part.first == name && part.dropFirst().first == "=" {
            return String(part.dropFirst(2))
        }
        return nil
    }
}

enum SCRAM {
    static func hmac(_ key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: key)))
    }

    /// Hi() of RFC 5802: PBKDF2 with HMAC-SHA-256 and one output block.
    static func hi(_ password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        let key = SymmetricKey(data: password)
        var u = Array(HMAC<SHA256>.authenticationCode(for: salt + [0, 0, 0, 1], using: key))
        var result = u
        for _ in 1..<max(1, iterations) {
            u = Array(HMAC<SHA256>.authenticationCode(for: u, using: key))
            for i in result.indices { result[i] ^= u[i] }
        }
        return result
    }
}
