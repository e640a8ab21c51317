/// An error with a message meant for a person: it names the file, line, key or
/// peer at fault. The CLI prints it as `error: <message>`.
public struct MetatrainError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
