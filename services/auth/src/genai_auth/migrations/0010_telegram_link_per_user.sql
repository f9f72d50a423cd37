-- The Telegram id a link is made with comes with the code, unproven (the bot's word, but the redeeming call
-- takes no credential): one active link per Telegram account and user, so that redeeming a code with
-- someone else's Telegram id cannot end their link. The bot ends an account's earlier link to another
-- user itself, with that link's own key, when the account links elsewhere.
DROP INDEX telegram_links_active_idx;
CREATE UNIQUE INDEX telegram_links_active_idx ON telegram_links (telegram_user_id, user_id)
    WHERE revoked_at IS NULL;
