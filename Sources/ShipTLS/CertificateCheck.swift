import Foundation
import X509

/// One finding of `TLSFiles.inspect`: fine, worth a warning, or a fault that stops the link.
public struct TLSFinding: Sendable, Equatable {
    public enum Level: Sendable, Equatable { case ok, warning, failure }
    public let level: Level
    public let text: String
}

extension TLSFiles {
    /// Reads the three files as `walship check` does, one finding per property: each parses, the
    /// certificate is within its validity (a warning in its last `warnDays`), the key is the certificate's,
    /// and the CA signed it. Says which file is at fault, never what a key holds.
    public func inspect(now: Date = Date(), warnDays: Int = 30) -> [TLSFinding] {
        func read(_ path: String) -> String? {
            guard FileManager.default.isReadableFile(atPath: path), let data = FileManager.default.contents(atPath: path) else {
                return nil
            }
            return String(decoding: data, as: UTF8.self)
        }
        var findings: [TLSFinding] = []
        func fail(_ text: String) -> [TLSFinding] { findings + [TLSFinding(level: .failure, text: text)] }

        guard let certText = read(certificate) else {
            return fail("cannot read tls-cert \(certificate) (hint: check the path and that this user may read it)")
        }
        guard let keyText = read(privateKey) else {
            return fail("cannot read tls-key \(privateKey) (hint: check the path and that this user may read it)")
        }
        guard let caText = read(authority) else {
            return fail("cannot read tls-ca \(authority) (hint: check the path and that this user may read it)")
        }
        guard let cert = try? Certificate(pemEncoded: certText) else {
            return fail("tls-cert \(certificate) is not a PEM certificate")
        }
        guard let key = try? Certificate.PrivateKey(pemEncoded: keyText) else {
            return fail("tls-key \(privateKey) is not a PEM private key")
        }
        guard let ca = try? Certificate(pemEncoded: caText) else { return fail("tls-ca \(authority) is not a PEM certificate") }

        let name = cert.subject.description
        if now < cert.notValidBefore {
            findings.append(
                TLSFinding(
                    level: .failure,
                    text:
                        "tls-cert \(certificate) (\(name)) is not valid before \(iso(cert.notValidBefore)) (hint: is this host's clock right?)"
                ))
        } else if now > cert.notValidAfter {
            findings.append(
                TLSFinding(
                    level: .failure,
                    text:
                        "tls-cert \(certificate) (\(name)) expired at \(iso(cert.notValidAfter)) (hint: walship certs init makes a new set)"
                ))
        } else if cert.notValidAfter.timeIntervalSince(now) < Double(warnDays) * 86400 {
            findings.append(
                TLSFinding(
                    level: .warning,
                    text: "tls-cert \(certificate) (\(name)) expires at \(iso(cert.notValidAfter)), in less than \(warnDays) days"
                ))
        } else {
            findings.append(
                TLSFinding(level: .ok, text: "tls-cert \(certificate) (\(name)) valid until \(iso(cert.notValidAfter))"))
        }
        if key.publicKey == cert.publicKey {
            findings.append(TLSFinding(level: .ok, text: "tls-key \(privateKey) is the key of tls-cert"))
        } else {
            findings.append(
                TLSFinding(
                    level: .failure,
                    text:
                        "tls-key \(privateKey) is not the key of tls-cert \(certificate) (hint: use the .key file made with that certificate)"
                ))
        }
        if cert.issuer == ca.subject, ca.publicKey.isValidSignature(cert.signature, for: cert) {
            if now > ca.notValidAfter {
                findings.append(TLSFinding(level: .failure, text: "tls-ca \(authority) expired at \(iso(ca.notValidAfter))"))
            } else {
                findings.append(TLSFinding(level: .ok, text: "tls-cert is signed by tls-ca \(authority) (\(ca.subject))"))
            }
        } else {
            findings.append(
                TLSFinding(
                    level: .failure,
                    text:
                        "tls-cert \(certificate) is not signed by tls-ca \(authority) (hint: both ends need certificates from one walship certs init, and the CA it made)"
                ))
        }
        return findings
    }
}

/// Whose the first PEM certificate in `path` is and when it stops being valid: what a running process reports
/// of each certificate it uses (its `use`, e.g. "link CA", names it in errors).
public func certificateValidity(use: String, path: String) throws -> (subject: String, notValidAfter: Date) {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw TLSSetupError("cannot read the \(use) certificate \(path) (hint: check the path and that this user may read it)")
    }
    guard let certificate = try? Certificate(pemEncoded: String(decoding: data, as: UTF8.self)) else {
        throw TLSSetupError("the \(use) certificate \(path) is not a PEM certificate")
    }
    return (certificate.subject.description, certificate.notValidAfter)
}

private func iso(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    return formatter.string(from: date)
}
