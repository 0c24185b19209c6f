<?php
/*
 * Plugin Name: offload e2e: one database row per login session
 *
 * For the e2e site only (scripts/e2e/wordpress-up.sh links this folder as each server's
 * wp-content/mu-plugins). WordPress keeps all of a user's login sessions in one user-meta
 * value, read, changed and written back whole on each login: two logins of one user at
 * once (the e2e tests log the admin in from several tests in parallel) can each write the
 * list without the other's session, whose cookies then stop working midway through a test.
 * Here each session is a row of its own, so a login adds a row and touches no other.
 * Nothing offload does depends on how WordPress stores sessions.
 */

if (!defined('ABSPATH')) {
    exit;
}

final class Offload_E2E_Session_Tokens extends WP_Session_Tokens
{
    private const PREFIX = 'offload_session_';

    protected function get_sessions()
    {
        $sessions = array();
        foreach ($this->stored() as $verifier => $session) {
            if (is_array($session) && $this->is_still_valid($session)) {
                $sessions[$verifier] = $session;
            }
        }
        return $sessions;
    }

    protected function get_session($verifier)
    {
        $session = get_user_meta($this->user_id, self::PREFIX . $verifier, true);
        return is_array($session) && $this->is_still_valid($session) ? $session : null;
    }

    protected function update_session($verifier, $session = null)
    {
        if ($session) {
            update_user_meta($this->user_id, self::PREFIX . $verifier, $session);
        } else {
            delete_user_meta($this->user_id, self::PREFIX . $verifier);
        }
    }

    protected function destroy_other_sessions($verifier)
    {
        foreach (array_keys($this->stored()) as $other) {
            if ($other !== $verifier) {
                $this->update_session($other);
            }
        }
    }

    protected function destroy_all_sessions()
    {
        foreach (array_keys($this->stored()) as $verifier) {
            $this->update_session($verifier);
        }
    }

    /** Every session row of the user, expired ones too: verifier => session. */
    private function stored()
    {
        $stored = array();
        foreach ((array) get_user_meta($this->user_id) as $key => $values) {
            if (strpos($key, self::PREFIX) === 0) {
                $stored[substr($key, strlen(self::PREFIX))] = maybe_unserialize($values[0] ?? null);
            }
        }
        return $stored;
    }

    public static function drop_sessions()
    {
        global $wpdb;
        $wpdb->query($wpdb->prepare(
            "DELETE FROM {$wpdb->usermeta} WHERE meta_key LIKE %s",
            $wpdb->esc_like(self::PREFIX) . '%'
        ));
    }
}

add_filter('session_token_manager', function () {
    return 'Offload_E2E_Session_Tokens';
});
