<?php
/*
 * Router for PHP's built-in web server in front of Debian's WordPress
 * (docroot /usr/share/wordpress), started by scripts/e2e/wordpress-up.sh:
 *
 *   php -S 127.0.0.1:PORT -t /usr/share/wordpress scripts/e2e/wordpress/router.php
 *
 * - /wp-content/... is served from this server's own content folder
 *   (env OFFLOAD_WP_CONTENT_DIR; Debian's Apache config does the same with an Alias
 *   to /var/lib/wordpress/wp-content), so each server has its own uploads/.
 * - Existing files and directories under the docroot are left to the built-in server
 *   (static files, wp-admin/*.php, wp-login.php, directory index.php).
 * - Everything else goes through index.php (pretty permalinks, /wp-json/...), like
 *   the usual "RewriteRule . /index.php" of WordPress's .htaccess.
 */

// The built-in server does not copy the environment into $_SERVER; Debian's wp-config.php
// reads $_SERVER['WORDPRESS_CONFIG'] (Apache's SetEnv) to pick /etc/wordpress/config-*.php.
foreach (['WORDPRESS_CONFIG', 'OFFLOAD_WP_CONFIG', 'OFFLOAD_WP_CONTENT_DIR', 'OFFLOAD_WP_PUBLIC_URL', 'OFFLOAD_WP_SERVER'] as $k) {
    $v = getenv($k);
    if ($v !== false) {
        $_SERVER[$k] = $v;
    }
}

$uri = $_SERVER['REQUEST_URI'];
$path = rawurldecode(parse_url($uri, PHP_URL_PATH) ?? '/');
$docroot = rtrim($_SERVER['DOCUMENT_ROOT'], '/');

function offload_mime(string $file): string {
    static $types = [
        'jpg' => 'image/jpeg', 'jpeg' => 'image/jpeg', 'jpe' => 'image/jpeg',
        'png' => 'image/png', 'gif' => 'image/gif', 'webp' => 'image/webp',
        'avif' => 'image/avif', 'svg' => 'image/svg+xml', 'ico' => 'image/x-icon',
        'css' => 'text/css; charset=UTF-8', 'js' => 'text/javascript; charset=UTF-8',
        'json' => 'application/json', 'txt' => 'text/plain; charset=UTF-8',
        'html' => 'text/html; charset=UTF-8', 'pdf' => 'application/pdf',
        'mp4' => 'video/mp4', 'webm' => 'video/webm', 'mp3' => 'audio/mpeg',
        'woff' => 'font/woff', 'woff2' => 'font/woff2', 'ttf' => 'font/ttf',
        'zip' => 'application/zip',
    ];
    $ext = strtolower(pathinfo($file, PATHINFO_EXTENSION));
    return $types[$ext] ?? 'application/octet-stream';
}

$content_dir = getenv('OFFLOAD_WP_CONTENT_DIR');
if ($content_dir && strncmp($path, '/wp-content/', 12) === 0) {
    $rel = substr($path, 12);
    $file = rtrim($content_dir, '/') . '/' . $rel;
    if (strpos($rel, '..') !== false || strpos($rel, "\0") !== false) {
        http_response_code(400);
        return true;
    }
    if (is_file($file)) {
        if (preg_match('/\.php$/i', $file)) {
            // Plugin/theme PHP entry points (rare): run them like Apache would.
            $_SERVER['SCRIPT_FILENAME'] = $file;
            $_SERVER['SCRIPT_NAME'] = $path;
            $_SERVER['PHP_SELF'] = $path;
            chdir(dirname($file));
            require $file;
            return true;
        }
        $size = filesize($file);
        $mtime = filemtime($file);
        $etag = sprintf('"%x-%x"', $mtime, $size);
        header('Content-Type: ' . offload_mime($file));
        header('Last-Modified: ' . gmdate('D, d M Y H:i:s', $mtime) . ' GMT');
        header('ETag: ' . $etag);
        if (($_SERVER['HTTP_IF_NONE_MATCH'] ?? '') === $etag) {
            http_response_code(304);
            return true;
        }
        header('Content-Length: ' . $size);
        if ($_SERVER['REQUEST_METHOD'] !== 'HEAD') {
            readfile($file);
        }
        return true;
    }
    http_response_code(404);
    header('Content-Type: text/plain; charset=UTF-8');
    echo "Not Found\n";
    return true;
}

$target = $docroot . $path;
if ($path !== '/' && is_file($target)) {
    return false; // static file or a .php script: the built-in server handles it
}
if (is_dir($target) && is_file(rtrim($target, '/') . '/index.php')) {
    return false; // e.g. /wp-admin/ -> wp-admin/index.php
}

// Front controller: pretty permalinks, /wp-json/, 404 pages.
$_SERVER['SCRIPT_NAME'] = '/index.php';
$_SERVER['SCRIPT_FILENAME'] = $docroot . '/index.php';
$_SERVER['PHP_SELF'] = '/index.php';
chdir($docroot);
require $docroot . '/index.php';
return true;
