<?php
// What PHP made of the form it was sent: the replace-mode tests check the fields offload
// writes in place of each file as an app reads them.
header('Content-Type: application/json');
echo json_encode(['post' => $_POST, 'files' => array_keys($_FILES)]);
