import Foundation

extension AWSCredentials {
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), or nil when either is unset.
    public static func fromEnvironment(_ environment: [String: String]) -> AWSCredentials? {
        guard let id = environment["AWS_ACCESS_KEY_ID"], !id.isEmpty,
            let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty
        else { return nil }
        let token = environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        return AWSCredentials(accessKeyID: id, secretAccessKey: secret, sessionToken: token)
    }

    /// Reads a credentials file in the AWS shared format: `aws_access_key_id`, `aws_secret_access_key` and
    /// optionally `aws_session_token`, in the `[default]` section (or `profile`), or outside any section.
    public static func load(
        file path: String, profile: String = "default"
    ) throws(S3ConfigurationError)
        -> AWSCredentials
    {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8)
        else {
            throw S3ConfigurationError(
                "the archive credentials file \(path) cannot be read",
                hint: "give a file readable by this user (mode 0600), in the AWS credentials format")
        }
        return try parse(text, profile: profile, origin: path)
    }

    static func parse(_ text: String, profile: String, origin: String) throws(S3ConfigurationError) -> AWSCredentials {
        var sections: [String: [String: String]] = [:]
        var current = ""
        for rawLine in text.split(whereSeparator: \.isNewline) {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                current = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                if current.hasPrefix("profile ") { current = String(current.dropFirst("profile ".count)) }
                continue
            }
            guard let equals = line.firstIndex(of: "=") else { continue }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            sections[current, default: [:]][name] = value
        }
        let chosen = sections[profile] ?? sections[""] ?? (sections.count == 1 ? sections.first!.value : [:])
        guard let id = chosen["aws_access_key_id"], !id.isEmpty, let secret = chosen["aws_secret_access_key"],
            !secret.isEmpty
        else {
            throw S3ConfigurationError(
                "the archive credentials file \(origin) has no aws_access_key_id and aws_secret_access_key"
                    + (sections.isEmpty ? "" : " in its [\(profile)] section"),
                hint: "write them as '[\(profile)]', 'aws_access_key_id = ...', 'aws_secret_access_key = ...'")
        }
        return AWSCredentials(accessKeyID: id, secretAccessKey: secret, sessionToken: chosen["aws_session_token"])
    }
}
