-- What a key may do: "user" acts with the user role whatever its owner's; "admin" with the owner's role.
-- New keys are "user" unless an admin asks for "admin". Keys made before scopes existed keep what they
-- could do: an admin's as "admin".
ALTER TABLE api_keys ADD COLUMN scope text NOT NULL DEFAULT 'user' CHECK (scope IN ('user', 'admin'));
UPDATE api_keys k SET scope = 'admin' FROM users u WHERE u.id = k.user_id AND u.role = 'admin';
